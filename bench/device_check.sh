#!/usr/bin/env bash
# One device-machine session, from the repo root: versions and card, the decoder-path GPU tests, the
# benchmarks (DEC Qwen3-0.6B bf16 + FP8 and its kernel profile, ENC bert-base + ModernBERT-base, TEXT bf16 + FP8,
# RERANK Qwen3-0.6B yes/no), the encoders' kernel profiles, then the other GPU tests. Each stage runs under its own
# time limit, cut to what is left of one overall budget, so a hang costs its own stage only.
#
#   bash bench/device_check.sh
#
# Env: OUT     folder for the logs and JSON (the device tool sets it; default ./device_out)
#      TOK     folder holding the MiniLM tokenizer files (default .tok, else build/carry/tok; TEXT and the
#              tokenizer tests need it)
#      BUDGET  seconds for all stages together (default 470: the script ends within ~8 minutes)
#      SMOKE   set (SMOKE=1) to run the benchmarks with --smoke: a CPU check of this script
# Writes $OUT/device_check.log (everything printed), dec.json, enc.json, text.json, rerank.json (bench_core.py --out,
# rewritten after every measurement: a stage cut short keeps what it measured), pytest_*.xml (JUnit).
set -u -o pipefail

OUT=${OUT:-$PWD/device_out}
TOK=${TOK:-$([[ -d .tok ]] && echo .tok || echo build/carry/tok)}
BUDGET=${BUDGET:-470}
mkdir -p "$OUT"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# bitsandbytes is not in the device image: a carried copy (build/carry, see tests/test_quantized_linear.py)
if ! python -c "import bitsandbytes" 2>/dev/null && [[ -d build/carry/bitsandbytes ]]; then
    export PYTHONPATH=$PYTHONPATH:$PWD/build/carry
fi
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export EMBZOO_TEST_TOKENIZER=$TOK
unset EMBZOO_ATTENTION EMBZOO_KERNELS

STATUS=()

# stage NAME MAX_SECONDS COMMAND...: run COMMAND for at most min(MAX_SECONDS, budget left); SIGINT at the
# limit, SIGKILL 15 s later; rc 124 = cut at its limit.
stage() {
    local name=$1 max=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    local limit=$((left < max ? left : max))
    if ((limit < 20)); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        STATUS+=("$(printf '%-22s skipped (budget spent)' "$name")")
        return
    fi
    echo
    echo "== $name | limit ${limit}s | started at ${SECONDS}s | $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    local rc=$?
    STATUS+=("$(printf '%-22s rc=%-4s %4ss (limit %ss)' "$name" "$rc" $((SECONDS - start)) "$limit")")
    echo "== $name: rc=$rc after $((SECONDS - start))s (total ${SECONDS}s)"
}

VERSIONS='
import inspect, json, sys
import torch
sys.path.insert(0, "bench")
import bench_core
from embzoo.modeling.attention import available_backends

info = bench_core.probe()
try:
    from torch.nn.attention.varlen import varlen_attn
    info["varlen_signature"] = str(inspect.signature(varlen_attn))
    # embzoo passes grouped K/V heads to it unrepeated: any head-count check it makes shows here
    code = [l.strip() for l in inspect.getsource(varlen_attn).splitlines()]
    info["varlen_head_checks"] = [l for l in code if "heads" in l and l.startswith(("if ", "num_heads"))]
except ImportError as e:
    info["varlen_signature"] = repr(e)
info["backends bf16 causal"] = available_backends("cuda", torch.bfloat16, {"causal"})
info["backends bf16 causal softcap"] = available_backends("cuda", torch.bfloat16, {"causal", "softcap"})
print(json.dumps(info, indent=1))
'

SUMMARY='
import json, pathlib, sys

for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    result = json.loads(path.read_text())
    info = result["probe"]
    print("--", path.name, "|", info.get("gpu"), "| torch", info.get("torch"))
    for p in result["parity"]:
        shown = {k: v for k, v in p.items() if k not in ("parity", "ok")}  # min_cos, or the RERANK score fields
        print("   parity", p["parity"], ":", shown, "ok" if p["ok"] else "FAILED")
    for row in result["summary"]:
        print("   " + " | ".join(f"{k}={v}" for k, v in row.items()))
'

# pytest with SIGINT restored (a shell that starts jobs in the background leaves it ignored), so a stage cut
# at its limit still prints its failures and writes its JUnit file
PYTEST=(python -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' -m gpu -q -p no:cacheprovider --maxfail=5 -rfE --durations=10 --continue-on-collection-errors)
BENCH=(python bench/bench_core.py --repeats 2 ${SMOKE:+--smoke})

run_all() {
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    stage versions 40 python -c "$VERSIONS"
    stage "gpu tests: decoder" 120 "${PYTEST[@]}" tests/test_gpu.py -k decoder --junitxml="$OUT/pytest_decoder.xml"
    stage "bench DEC" 200 "${BENCH[@]}" --workloads dec --fp8 --out "$OUT/dec.json"
    stage "profile DEC" 45 python bench/profile_kernels.py --model qwen3-0.6b ${SMOKE:+--smoke}
    stage "bench ENC" 110 "${BENCH[@]}" --workloads enc --models bert-base modernbert-base --out "$OUT/enc.json"
    if [[ -f $TOK/tokenizer.json ]]; then
        stage "bench TEXT" 120 "${BENCH[@]}" --workloads text --fp8 --tokenizer "$TOK" --out "$OUT/text.json"
    else
        echo "== bench TEXT: skipped, no tokenizer files in $TOK (carry the MiniLM tokenizer there)"
        STATUS+=("$(printf '%-22s skipped (no %s)' "bench TEXT" "$TOK")")
    fi
    stage "bench RERANK" 60 "${BENCH[@]}" --workloads rerank --out "$OUT/rerank.json"
    stage "profile ENC" 60 bash -c "for m in bert-base modernbert-base; do python bench/profile_kernels.py --model \$m ${SMOKE:+--smoke}; done"
    stage "gpu tests: the rest" 240 "${PYTEST[@]}" -k "not decoder" --junitxml="$OUT/pytest_rest.xml"

    echo
    echo "== summary after ${SECONDS}s"
    printf '%s\n' "${STATUS[@]}"
    python -c "$SUMMARY" "$OUT"
}

run_all 2>&1 | tee "$OUT/device_check.log"
