#!/bin/bash
# The run behind docs/operator-guide.md and the session of docs/offboarding.md: starts a real fairvox on loopback
# (SIP 127.0.0.1:17460, HTTP 127.0.0.1:17480, RTP 17500-17599, data in /tmp/fairvox-guide/data), runs each command
# of the guide in order with the fairvox CLI, curl and sipp, and records every command, what it printed and its
# exit code in /tmp/fairvox-guide/transcript.txt. The docs' code blocks are that transcript's commands and outputs
# as they are, but for the colour codes of the server's log lines (removed) and the `[exit 0]` lines (left out).
#
#   cargo build && bash tests/tools/capture_operator_guide.sh
#
# Needs sipp, curl and python3 (json.tool), and those ports free; stops its server at the end.
set -u
G=/tmp/fairvox-guide
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/fairvox
OUT=$G/transcript.txt
mkdir -p $G
rm -rf $G/data $OUT $G/acme-* $G/burst.cfg $G/last.txt $G/job.json
mkdir -p $G/bin && ln -sf $BIN $G/bin/fairvox
ln -sfn $REPO/tests $G/tests   # so the sipp scenarios are tests/sipp/... as in the repository
export PATH=$G/bin:$PATH
cd $G
cat > fairvox.toml <<'TOML'
data_dir = "/tmp/fairvox-guide/data"

[sip]
listen = "127.0.0.1:17460"

[http]
listen = "127.0.0.1:17480"

[rtp]
ports = "17500-17599"

[log]
format = "text"

[plans.pro]
price_per_minute_cents = 2

[offboard]
grace_secs = 5
TOML
# A command, its output (a newline added after output that has none, so the exit line stands apart), its exit code.
step() {
    echo "\$ $*" >> $OUT
    eval "$@" > $G/step.out 2>&1
    local rc=$?
    cat $G/step.out >> $OUT
    [[ -s $G/step.out && $(tail -c1 $G/step.out | od -An -c | tr -d ' ') != '\n' ]] && echo >> $OUT
    echo "[exit $rc]" >> $OUT
    echo >> $OUT
}
note() { echo "### $*" >> $OUT; }

note "first start"
step fairvox check-config --config fairvox.toml
fairvox serve --config fairvox.toml > server.log 2>&1 &
echo $! > server.pid
for i in $(seq 50); do curl -sf http://127.0.0.1:17480/healthz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:17480/healthz >/dev/null || { echo "server did not start"; cat server.log | head; exit 1; }
step "grep -E 'operator token|fairvox serving' server.log"
step ls -l data/
export FAIRVOX_ADMIN_TOKEN=$(cat data/admin-token)
H=http://127.0.0.1:17480
export H

note "plans"
step "curl -s -X POST \$H/v1/tenants -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" -H 'Content-Type: application/json' -d '{\"id\":\"acme\",\"name\":\"Acme Dental\",\"plan\":\"gold\"}'"

note "create tenant curl"
step "curl -s -X POST \$H/v1/tenants -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" -H 'Content-Type: application/json' -d '{\"id\":\"acme\",\"name\":\"Acme Dental\",\"plan\":\"pro\"}'"
note "create tenant cli"
step fairvox tenant create globex --name "'Globex Corp'" --plan free --config fairvox.toml
step fairvox tenant list --config fairvox.toml
step fairvox tenant get acme --config fairvox.toml --json

note "apps"
step fairvox app create --tenant acme --name receptionist --stream-url wss://agents.acme.example/twilio --auth-header "'Bearer agent-secret-0123456789'" --param lang=en --config fairvox.toml
step fairvox app create --tenant acme --name echo-test --echo --config fairvox.toml --json
ECHO=$(fairvox app list --tenant acme --config fairvox.toml --json | python3 -c 'import sys,json;print([a["id"] for a in json.load(sys.stdin)["items"] if a["name"]=="echo-test"][0])')
echo "ECHO=$ECHO" >> $OUT
step fairvox app list --tenant acme --config fairvox.toml

note "number"
step "curl -s -X POST \$H/v1/tenants/acme/numbers -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" -H 'Content-Type: application/json' -d '{\"number\":\"+15551230001\",\"app_id\":\"$ECHO\"}'"
step fairvox number list --tenant acme --config fairvox.toml
GAPP=$(fairvox app create --tenant globex --name e --echo --config fairvox.toml --json | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')
echo "GAPP (globex's echo app, from fairvox app create --json)=$GAPP" >> $OUT
step fairvox number claim +15551230001 --app $GAPP --tenant globex --config fairvox.toml

note "trunk"
step fairvox trunk create --tenant acme --name lab --source 127.0.0.0/8 --source 203.0.113.0/24 --config fairvox.toml

note "key"
step "curl -s -X POST \$H/v1/tenants/acme/keys -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" -H 'Content-Type: application/json' -d '{\"name\":\"backend\",\"scopes\":[\"read\",\"write\"]}'"
KEY=$(fairvox key create --tenant acme --name ci --config fairvox.toml --json | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
echo "KEY (from fairvox key create --json)=$KEY" >> $OUT
step fairvox key create --tenant acme --name reporting --read-only --config fairvox.toml
step fairvox key list --tenant acme --config fairvox.toml
export KEY

note "call"
sleep 1
step "sipp -sn uac -s 15551230001 127.0.0.1:17460 -m 1 -d 3000 -nostdin -timeout 30s -timeout_error > /dev/null; echo sipp exit \$?"
sleep 1
step "FAIRVOX_API_KEY=\$KEY fairvox calls --url \$H"
SID=$(FAIRVOX_API_KEY=$KEY fairvox calls --url $H --json | python3 -c 'import sys,json;print(json.load(sys.stdin)["items"][0]["call_sid"])')
step "curl -s \$H/v1/calls/$SID -H \"Authorization: Bearer \$KEY\""
step "FAIRVOX_API_KEY=\$KEY fairvox usage --url \$H"
step "FAIRVOX_API_KEY=\$KEY fairvox usage --csv --url \$H"
step "FAIRVOX_API_KEY=\$KEY fairvox invoices --url \$H"
step "FAIRVOX_API_KEY=\$KEY fairvox audit --limit 5 --url \$H"
step "curl -s -o /dev/null -w '%{http_code}\n' \$H/metrics"
step "curl -s \$H/metrics -H \"Authorization: Bearer \$KEY\""
step "curl -s \$H/metrics -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | grep 'tenant=\"acme\"' | grep -v _bucket | grep -v ' 0\$'"

note "suspend"
step fairvox tenant suspend acme --config fairvox.toml
sleep 1
step "sipp -sf tests/sipp/uac_expect_status.xml -set expected_status 403 -s 15551230001 127.0.0.1:17460 -m 1 -nostdin -timeout 30s -timeout_error > /dev/null; echo sipp exit \$?"
step "curl -s \$H/metrics -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | grep calls_rejected_total"
step "FAIRVOX_API_KEY=\$KEY fairvox app list --url \$H"
step fairvox tenant resume acme --config fairvox.toml
step "FAIRVOX_API_KEY=\$KEY fairvox app list --url \$H"

note "rotation"
step "FAIRVOX_API_KEY=\$KEY fairvox key create --name ci-2 --url \$H"
NEW=$(grep -E '^key +fvk_' $OUT | tail -1 | awk '{print $2}')
export NEW
step "FAIRVOX_API_KEY=\$NEW fairvox key revoke ${KEY:0:12} --url \$H"
step "FAIRVOX_API_KEY=\$KEY fairvox app list --url \$H"
step "curl -s -i \$H/v1/apps -H \"Authorization: Bearer \$KEY\""
step "FAIRVOX_API_KEY=\$NEW fairvox key list --url \$H"

note "rate limits"
{ echo "header = \"Authorization: Bearer $NEW\""
  echo 'write-out = "%{http_code} retry-after: %header{retry-after}\n"'
  for i in $(seq 149); do echo "url = \"$H/v1/apps\""; echo 'output = "/dev/null"'; done
  echo next; echo "header = \"Authorization: Bearer $NEW\""; echo include
  echo "url = \"$H/v1/apps\""; echo 'output = "last.txt"'; } > burst.cfg
step "curl -s -K burst.cfg | sort | uniq -c"
step cat last.txt
step "curl -s \$H/metrics -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | grep rate_limited"
step "curl -s -o /dev/null -w '%{http_code}\n' \$H/v1/apps -H \"Authorization: Bearer \${NEW:0:13}xxxxxxxx\""
sleep 2
step "curl -s -o /dev/null -w '%{http_code}\n' \$H/v1/apps -H \"Authorization: Bearer \$NEW\""

note "offboard: a call up"
sleep 1
step "sipp -sf tests/sipp/uac_wait_for_bye.xml -s 15551230001 127.0.0.1:17460 -m 1 -nostdin -timeout 60s -timeout_error > up.out 2>&1 &"
UP=$!
sleep 1.5
note "offboard: start"
step fairvox offboard start acme --config fairvox.toml
step "curl -s -i -X POST \$H/v1/tenants/acme/offboard -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\""
sleep 0.3
note "offboard: in the grace"
step fairvox offboard status acme --config fairvox.toml
step "sipp -sf tests/sipp/uac_expect_status.xml -set expected_status 403 -s 15551230001 127.0.0.1:17460 -m 1 -nostdin -timeout 30s -timeout_error > /dev/null; echo sipp exit \$?"
step "curl -s \$H/metrics -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | grep calls_rejected_total"
step "FAIRVOX_API_KEY=\$NEW fairvox app list --url \$H"
step fairvox offboard export acme --config fairvox.toml
note "offboard: the call up gets its BYE at the deadline"
step "wait \$UP; echo sipp exit \$?"
for i in $(seq 100); do
    fairvox offboard status acme --config fairvox.toml --json | grep -q '"status":"finished"' && break
    sleep 0.2
done
note "offboard: finished"
step fairvox offboard status acme --config fairvox.toml
step "curl -s \$H/v1/tenants/acme/offboard -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | python3 -m json.tool"
note "offboard: downloads"
step fairvox offboard export acme --config fairvox.toml
step fairvox offboard invoice acme --config fairvox.toml
step fairvox offboard certificate acme --config fairvox.toml
step python3 -m json.tool acme-certificate.json
step sha256sum acme-export.tar.gz
step python3 -m json.tool acme-final-invoice.json
step "curl -s \$H/v1/tenants/acme/offboard/certificate -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | python3 -m json.tool"
step "curl -s \$H/v1/tenants/acme/offboard/invoice -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | python3 -m json.tool"
step "curl -s -D - -o acme-export-curl.tar.gz \$H/v1/tenants/acme/offboard/export -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\""
step sha256sum acme-export-curl.tar.gz
step tar tzf acme-export.tar.gz
step "tar xzf acme-export.tar.gz && head -3 acme-export/calls.csv"
note "offboard: what remains"
step fairvox tenant get acme --config fairvox.toml
step "curl -s \$H/v1/tenants/acme -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\""
step fairvox tenant list --config fairvox.toml
step "FAIRVOX_API_KEY=\$NEW fairvox calls --url \$H"
step "curl -s \$H/v1/tenants/acme/offboard -H \"Authorization: Bearer \$NEW\""
step fairvox tenant create acme --name "'Acme again'" --config fairvox.toml
step fairvox number claim +15551230001 --app $GAPP --tenant globex --config fairvox.toml
step "curl -s \$H/metrics -H \"Authorization: Bearer \$FAIRVOX_ADMIN_TOKEN\" | grep -c 'tenant=\"acme\"'"
step "ls -l data/ data/offboarding/acme/"

note "errors"
step fairvox tenant list --url http://127.0.0.1:9
step fairvox app list --config fairvox.toml

kill $(cat server.pid)
wait $(cat server.pid)
