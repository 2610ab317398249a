#!/usr/bin/env bash
# Fuzz the parsers of hostile input side by side, for FUZZ_SECONDS each:
#   fuzz/fuzz_virtq.c      libFuzzer + ASan + UBSan over the C split-ring fast path
#   fuzz/fuzz_requests.py  the virtio-gpio request/eventq controller (seeded random loop)
#   fuzz/fuzz_protocol.py  the server's vfio-user message layer through its real socket
#                          (seeded; split/stalled streams, bad headers, fds; FUZZ_SEED)
#   fuzz/fuzz_fastpath.c   libFuzzer + ASan + UBSan over the C request path (BAR0 hot
#                          registers + requestq + line table, fastpath.c/gpio_lines.c)
# Prints executions, coverage (cov/ft) and crashes; exits non-zero on any crash or hang.
# Outputs under build/fuzz/: corpus/ (seeds, regenerated), work/ (grown corpus, kept across
# runs), artifacts/ (crash-*, timeout-*, oom-* reproducers), *.log.
# Reproduce a crash: build/fuzz/fuzz_virtq build/fuzz/artifacts/crash-<sha>
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
secs=${FUZZ_SECONDS:-60}
py=${PY:-$top/.venv/bin/python}
out=$top/build/fuzz
cc=${FUZZ_CC:-clang-14}
mkdir -p "$out/corpus" "$out/work" "$out/artifacts"
rm -f "$out"/artifacts/crash-* "$out"/artifacts/timeout-* "$out"/artifacts/oom-* \
      "$out"/artifacts/leak-* "$out"/artifacts/slow-unit-* "$out"/artifacts/fast-*

command -v "$cc" >/dev/null || { echo "fuzz: $cc not found (make setup-system installs clang-14)" >&2; exit 2; }
"$cc" -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter \
    -I cffi_build/csrc fuzz/fuzz_virtq.c cffi_build/csrc/virtq.c -o "$out/fuzz_virtq"
"$cc" -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter \
    -I cffi_build/csrc fuzz/fuzz_fastpath.c cffi_build/csrc/virtq.c cffi_build/csrc/gpio_lines.c \
    cffi_build/csrc/fastpath.c -o "$out/fuzz_fastpath"
mkdir -p "$out/corpus_fast" "$out/work_fast"
"$py" fuzz/make_fast_corpus.py "$out/corpus_fast"
"$py" fuzz/make_corpus.py "$out/corpus"
cp fuzz/regressions/* "$out/corpus/" 2>/dev/null || true     # past failures, replayed first
rm -f "$out/corpus/README.md"

echo "fuzz: running fuzz_virtq, fuzz_fastpath, fuzz_requests and fuzz_protocol for ${secs}s each"
set +e
"$out/fuzz_virtq" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/" \
    "$out/work" "$out/corpus" >"$out/fuzz_virtq.log" 2>&1 &
cpid=$!
"$py" fuzz/fuzz_protocol.py --seconds "$secs" ${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
    >"$out/fuzz_protocol.log" 2>&1 &
spid=$!
"$out/fuzz_fastpath" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/fast-" \
    "$out/work_fast" "$out/corpus_fast" >"$out/fuzz_fastpath.log" 2>&1 &
fpid=$!
"$py" fuzz/fuzz_requests.py --seconds "$secs" >"$out/fuzz_requests.log" 2>&1
prc=$?
wait "$cpid"
crc=$?
wait "$spid"
src=$?
wait "$fpid"
frc=$?
set -e

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz_virtq.log" | tail -1)
covline=$(grep -E '^#[0-9]+' "$out/fuzz_virtq.log" | grep -E 'cov: ' | tail -1 || true)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$covline")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$covline")
corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$covline")
ncrash=$(find "$out/artifacts" -type f \( -name '*crash-*' -o -name '*leak-*' -o -name '*oom-*' \) | wc -l)
nhang=$(find "$out/artifacts" -type f -name '*timeout-*' | wc -l)
echo "fuzz_virtq:    executions ${execs:-?} cov ${cov:-?} ft ${ft:-?} corpus ${corp:-?} crashes $ncrash hangs $nhang (exit $crc)"
fexecs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz_fastpath.log" | tail -1)
fcov=$(grep -E '^#[0-9]+' "$out/fuzz_fastpath.log" | grep -E 'cov: ' | tail -1 | sed -n 's/.* cov: \([0-9]*\).*/\1/p' || true)
echo "fuzz_fastpath: executions ${fexecs:-?} cov ${fcov:-?} (exit $frc)"
echo "$(tail -1 "$out/fuzz_requests.log") (exit $prc)"
echo "$(grep -E '^(fuzz_protocol|FAILURE)' "$out/fuzz_protocol.log" | tail -1) (exit $src)"

rc=0
if [[ $crc -ne 0 || $ncrash -ne 0 || $nhang -ne 0 ]]; then
    echo "fuzz_virtq FAILED; log tail:" >&2
    tail -40 "$out/fuzz_virtq.log" >&2
    ls -l "$out/artifacts" >&2
    rc=1
fi
if [[ $src -ne 0 ]]; then
    echo "fuzz_protocol FAILED; log tail:" >&2
    grep -A3 -E '^FAILURE' "$out/fuzz_protocol.log" >&2 || tail -40 "$out/fuzz_protocol.log" >&2
    rc=1
fi
if [[ $frc -ne 0 ]]; then
    echo "fuzz_fastpath FAILED; log tail:" >&2
    tail -40 "$out/fuzz_fastpath.log" >&2
    ls -l "$out/artifacts" >&2
    rc=1
fi
if [[ $prc -ne 0 ]]; then
    echo "fuzz_requests FAILED; log tail:" >&2
    tail -40 "$out/fuzz_requests.log" >&2
    rc=1
fi
exit $rc
