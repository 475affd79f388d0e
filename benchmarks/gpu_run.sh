python3 -m pip install -q --no-index --no-deps .whl/*.whl && export PYTHONPATH="$PWD" && mkdir -p "$OUT" && {
  # The device check of issue 18, as run on a lent H200 from the repository root (Python 3.12,
  # torch 2.11, timm and onnxruntime installed; optuna and its dependencies from the carried .whl/
  # folder, which should also hold nvidia-ml-py for SM utilisation; no Ray):
  #     run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=600)
  # 1. The GPU report: stops itself within --budget 420 s (timeout is only the backstop) and writes
  #    benchmarks/results/<gpu>-<date>.json and .md after every part; both are copied to $OUT.
  # 2. The suite without its slow tests and without Ray (about a minute with 8 processes).
  # About 9 minutes in all, within one 600-s command; everything printed is saved under $OUT.
  timeout -s INT -k 20 460 python3 benchmarks/gpu_report.py --device cuda --budget 420 2>&1 | tee "$OUT/gpu_report.log"
  cp -r benchmarks/results "$OUT/"
  timeout -s INT -k 10 110 python3 -m pytest -q -m "not slow" -n 8 --ignore=tests/backends/test_ray.py \
    > "$OUT/pytest.log" 2>&1
  echo "pytest exit $?"
  tail -n 30 "$OUT/pytest.log"
}
