//! From the OpenMetrics text that `prometheus-client` writes to the Prometheus text format 0.0.4.
//!
//! The two formats share their sample lines; they differ in the metadata. OpenMetrics names a counter family
//! without its `_total` suffix (`# TYPE fairvox_calls counter` above `fairvox_calls_total 3`), has `# UNIT` lines,
//! calls an untyped family `unknown`, and ends with `# EOF`. The 0.0.4 format, which every Prometheus and
//! `promtool check metrics` read, names the family by its sample (`# TYPE fairvox_calls_total counter`), has no
//! units and no end marker. Lines are independent (label values and help texts cannot hold a raw newline: the
//! encoder escapes them), so the translation is line by line.

use std::collections::HashSet;

/// Rewrites an OpenMetrics exposition into the Prometheus text format 0.0.4.
pub(crate) fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(prefix);
            out.push_str(name);
            if counters.contains(name) {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(if prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail });
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_counters_drops_unit_and_eof() {
        let om = "# HELP fairvox_calls Calls.\n\
                  # TYPE fairvox_calls counter\n\
                  fairvox_calls_total{tenant=\"a\"} 3\n\
                  # HELP fairvox_billable_seconds Billable.\n\
                  # TYPE fairvox_billable_seconds counter\n\
                  # UNIT fairvox_billable_seconds seconds\n\
                  fairvox_billable_seconds_total{tenant=\"a\"} 60\n\
                  # HELP g A gauge.\n\
                  # TYPE g gauge\n\
                  g 1\n\
                  # HELP u Untyped.\n\
                  # TYPE u unknown\n\
                  u 2\n\
                  # EOF\n";
        let expected = "# HELP fairvox_calls_total Calls.\n\
                        # TYPE fairvox_calls_total counter\n\
                        fairvox_calls_total{tenant=\"a\"} 3\n\
                        # HELP fairvox_billable_seconds_total Billable.\n\
                        # TYPE fairvox_billable_seconds_total counter\n\
                        fairvox_billable_seconds_total{tenant=\"a\"} 60\n\
                        # HELP g A gauge.\n\
                        # TYPE g gauge\n\
                        g 1\n\
                        # HELP u Untyped.\n\
                        # TYPE u untyped\n\
                        u 2\n";
        assert_eq!(openmetrics_to_prometheus(om), expected);
    }
}
