#!/bin/sh
# Entrypoint of the runtime image, compatible with the official tensorflow/serving image: serve
# ${MODEL_BASE_PATH}/${MODEL_NAME} on gRPC 8500 and REST 8501. Arguments given to the container are
# appended, so a later flag overrides these defaults (the last occurrence of a flag wins).
# `exec` makes the server PID 1's process, so `docker stop` signals reach it directly.
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
    --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
