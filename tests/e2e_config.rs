//! The binary's start-up: invalid configuration fails at once with the file, the key and the reason; the example
//! configuration shipped in `deploy/` is valid; `media.cpus` gives the media workers cores of their own.

mod common;

use std::process::Command;

use common::Server;

fn fairvox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fairvox"))
}

#[test]
fn invalid_config_fails_at_start_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[rtp]\nports = \"30000-20000\"\n").unwrap();
    let out = fairvox().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}: rtp.ports: ", path.display())), "{stderr}");

    std::fs::write(&path, "[[tenants]]\nid = \"a\"\n[[tenants.numbers]]\nnumber = \"+1555\"\napp = \"nope\"\n")
        .unwrap();
    let out = fairvox().args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenants[0].numbers[0].app: no app named \"nope\""), "{stderr}");

    let out = fairvox().args(["serve", "--config", "/nonexistent/fairvox.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fairvox.toml: cannot read"));

    let out = fairvox().args(["serve", "--rtp-ports", "5-3"]).output().unwrap();
    assert!(!out.status.success(), "a bad override is refused too");
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/fairvox.example.toml");
    let out = fairvox().args(["check-config", "--config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A kernel CPU list (`0-2,5`, as in `Cpus_allowed_list`) as CPU numbers.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Every thread of `pid`: its name and the CPUs it may run on, from `/proc`.
fn thread_affinities(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(status)) =
            (std::fs::read_to_string(task.join("comm")), std::fs::read_to_string(task.join("status")))
        else {
            continue; // the thread ended while we looked
        };
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list");
        out.push((comm.trim().to_owned(), parse_cpu_list(list)));
    }
    out
}

#[test]
fn dedicated_media_cpus_keep_the_worker_alone_on_its_core_and_everything_else_off_it() {
    let allowed = fairvox::sched::cpus::allowed_cpus().unwrap();
    let media = *allowed.last().unwrap();
    let config = format!("[media]\nworkers = 1\ncpus = [{media}]\n");

    if allowed.len() < 2 {
        // One CPU: giving it to the media workers would leave SIP and HTTP nowhere to run, and start-up says so.
        let err = Server::try_start(&config).err().expect("a server with no cpu left for the control plane");
        assert!(err.contains("media.cpus: ") && err.contains("leave at least one"), "{err}");
        return;
    }
    let server = Server::start(&config);
    let threads = thread_affinities(server.pid());
    let (workers, others): (Vec<_>, Vec<_>) = threads.iter().partition(|(name, _)| name.starts_with("fairvox-sched-"));
    assert_eq!(workers.len(), 1, "{threads:?}");
    assert_eq!(workers[0].1, vec![media], "the media worker runs only on cpu {media}: {threads:?}");
    // The main thread, the tokio runtime's workers and the runners.
    assert!(others.len() >= 3, "{threads:?}");
    for (name, cpus) in &others {
        assert!(!cpus.is_empty() && !cpus.contains(&media), "{name} may run on the media cpu {media}: {cpus:?}");
        assert!(cpus.iter().all(|c| allowed.contains(c)), "{name}: {cpus:?}");
    }
    assert!(server.log().contains("media workers get cores of their own"), "{}", server.log());
    drop(server);

    // A cpu this process may not use fails at start, naming the key and the cpus it may use.
    let err = Server::try_start("[media]\ncpus = [1023]\n").err().expect("cpu 1023 is not available here");
    assert!(err.contains("media.cpus: cpu 1023 is not one this process may run on"), "{err}");
    // And so does taking every cpu.
    let all: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
    let err = Server::try_start(&format!("[media]\ncpus = [{}]\n", all.join(", "))).err().expect("no cpu left");
    assert!(err.contains("leave at least one for SIP, HTTP and the control plane"), "{err}");
}

/// Each thread's (name, scheduling policy, real-time priority), from `/proc/PID/task/*/stat` (fields 41 and 40).
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended while we looked
        };
        let (head, rest) = stat.rsplit_once(')').expect("stat has (comm)");
        let name = head.split_once('(').expect("stat has (comm)").1.to_owned();
        // `rest` starts at field 3 (state).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        out.push((name, fields[38].parse().unwrap(), fields[37].parse().unwrap()));
    }
    out
}

#[test]
fn realtime_media_workers_run_at_sched_fifo_and_nothing_else_does() {
    let allowed = fairvox::sched::cpus::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        return; // media.cpus needs a cpu left for the control plane (the test above covers that refusal)
    }
    let media = *allowed.last().unwrap();
    let config = format!("[media]\nworkers = 1\ncpus = [{media}]\nrealtime_priority = 5\n");
    let privileged = std::thread::spawn(|| fairvox::sched::cpus::set_realtime(5).is_ok()).join().unwrap();
    if !privileged {
        // Without root, CAP_SYS_NICE or RLIMIT_RTPRIO the server refuses to start, saying what it needs.
        let err = Server::try_start(&config).err().expect("SCHED_FIFO without the privilege");
        assert!(
            err.contains("media.realtime_priority: scheduler worker 0 cannot run at SCHED_FIFO priority 5"),
            "{err}"
        );
        assert!(err.contains("CAP_SYS_NICE"), "{err}");
        return;
    }
    let server = Server::start(&config);
    let threads = thread_policies(server.pid());
    let (workers, others): (Vec<_>, Vec<_>) = threads.iter().partition(|(name, ..)| name.starts_with("fairvox-sched-"));
    assert_eq!(workers.len(), 1, "{threads:?}");
    assert_eq!((workers[0].1, workers[0].2), (libc::SCHED_FIFO as u32, 5), "{threads:?}");
    assert!(others.len() >= 3, "{threads:?}");
    for (name, policy, priority) in &others {
        assert_eq!((*policy, *priority), (libc::SCHED_OTHER as u32, 0), "{name} is not under the normal policy");
    }
    // Server::start waited for /healthz: the server came up with its worker at real-time priority.
    assert!(server.log().contains("media workers get cores of their own"), "{}", server.log());
    drop(server);

    // Without media.cpus the setting is refused before anything starts.
    let err = Server::try_start("[media]\nrealtime_priority = 5\n").err().expect("realtime without cpus");
    assert!(err.contains("media.realtime_priority: needs media.cpus"), "{err}");
}
