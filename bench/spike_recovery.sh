#!/usr/bin/env bash
# A traffic spike and the calm after it, against the embedded default served with
# `auto`: does the server hold its latency target during the spike, and how soon after
# it does it serve the full model again?
#
# Open-loop DL19 traffic (mrank replay --profile): CALM requests/s, a jump to SPIKE
# requests/s held SPIKE_S seconds, then CALM again until the end. The report
# ($OUT/spike.json) has every request with the rung that served it; the summary
# ($OUT/summary.json, also printed) gives p99 and served quality before, during and
# after the spike, and the recovery: seconds from the end of the spike until every
# later request was served by `full` (and until the first one was).
#
# Needs: the release binary, DL19 data, an export of the embedded default (the
# server's first start writes one). Overrides: CALM SPIKE SPIKE_S AFTER_S SLO_MS THREADS
# OUT PORT SEED (the arrivals and queries drawn; default 7). Nothing else should load the machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mrank=$root/target/release/mrank
data=${DATA:-../shared/data/trec-dl}
out=${OUT:-runs/spike}
calm=${CALM:-0.8}
spike=${SPIKE:-6.6}
spike_s=${SPIKE_S:-40}
after_s=${AFTER_S:-80}
slo_ms=${SLO_MS:-3000}
threads=${THREADS:-2}
mkdir -p "$out"

# Calm 20 s, 2 s up, the spike, 2 s down, calm until the end.
up=20
top=$((up + 2))
down=$((top + spike_s))
calm_again=$((down + 2))
end=$((calm_again + after_s))
profile="0:$calm,$up:$calm,$top:$spike,$down:$spike,$calm_again:$calm,$end:$calm"

port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
$mrank serve --addr "127.0.0.1:$port" --threads "$threads" --slo-ms "$slo_ms" 2>"$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
echo "== waiting for the server (a first start exports the model: minutes)" >&2
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
  kill -0 $server 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
  sleep 1
done
grep -h "quality ladder" "$out/serve.log" >&2 || true
echo "== profile $profile" >&2
$mrank replay --target "127.0.0.1:$port" --data "$data/dl19-bm25-top100.jsonl" \
  --qrels "$data/qrels.dl19-passage.txt" --slo-ms "$slo_ms" --mode ramp --config auto \
  --profile "$profile" --seed "${SEED:-7}" --out "$out/spike.json"
grep -E "VmHWM|VmRSS" /proc/$server/status > "$out/server-memory.txt"
kill $server; wait $server 2>/dev/null || true

python3 - "$out/spike.json" "$up" "$down" "$calm_again" "${QUALITY:-adapters/minilm-l6/eval.json}" > "$out/summary.json" <<'PY'
import json, math, sys
report = json.load(open(sys.argv[1]))
up, down, calm_again = (float(x) for x in sys.argv[2:5])
# Each rung's DL19 nDCG@10 from the quality table: the served rankings' own nDCG@10
# depends on which random queries a phase drew (a few dozen), the rung's does not.
rung = {c["id"]: c["ndcg@10"] for c in json.load(open(sys.argv[5]))["configs"]}
ok = [s for s in report["samples"] if s["status"] == 200]

def p99(xs):
    xs = sorted(xs)
    return xs[max(1, math.ceil(0.99 * len(xs))) - 1] if xs else None

def phase(lo, hi):
    sent = [s for s in report["samples"] if lo <= s["sent_s"] < hi]
    answered = [s for s in sent if s["status"] == 200]
    judged = [s["ndcg10"] for s in answered if s["ndcg10"] is not None]
    return {
        "from_s": lo, "to_s": hi, "requests": len(sent), "answered": len(answered),
        "refused": sum(s["status"] == 429 for s in sent),
        "p99_s": p99([s["latency_s"] for s in answered]),
        "full_share": sum(s["config"] == "full" for s in answered) / max(1, len(answered)),
        "mean_ndcg10": sum(judged) / len(judged) if judged else None,
        "mean_rung_ndcg10": (sum(rung[s["config"]] for s in answered) / len(answered)
                             if answered and all(s["config"] in rung for s in answered) else None),
    }

after = sorted((s for s in ok if s["sent_s"] >= down), key=lambda s: s["sent_s"])
not_full = [s["sent_s"] for s in after if s["config"] != "full"]
first_full = next((s["sent_s"] for s in after if s["config"] == "full"), None)
summary = {
    "profile_s": {"spike_from": up, "spike_to": down, "calm_from": calm_again},
    "before": phase(0, up),
    "spike": phase(up, down),
    "after": phase(down, report["duration_s"]),
    # Seconds after the spike's last second until the first request served by full, and
    # until every later one was (null: some request near the end still was not).
    "first_full_after_s": None if first_full is None else round(first_full - down, 2),
    "all_full_after_s": (None if not after or not_full and not_full[-1] == after[-1]["sent_s"] else
                         round(0.0, 2) if not not_full else
                         round(next(s["sent_s"] for s in after if s["sent_s"] > not_full[-1]) - down, 2)),
    "windows_within_slo": report["windows_within_slo"],
    "mix": report["config_mix"],
}
print(json.dumps(summary, indent=2))
PY
cat "$out/summary.json"
