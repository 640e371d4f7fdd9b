# The FedMLLM coordinator: CPU torch and the `coordinator` extra only (no bitsandbytes, openai,
# matplotlib), run as the unprivileged user fedmllm (uid and gid 10001). Build from the
# repository root:  docker build -f deploy/docker/coordinator.Dockerfile -t fedmllm-coordinator .
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY coordinator coordinator
COPY silo_agent silo_agent
COPY bench bench
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# A C/C++ compiler: torch.compile builds the fused optimizer steps with it, and the coordinator
# its native fold loops (coordinator/aggregation/native.c); without one both run slower in ATen.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
# torch first, as a CPU build: the coordinator never runs a model
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(echo /wheels/fedmllm-*.whl)[coordinator]" && rm -rf /wheels
# Mounted keys must be readable by this group: chgrp 10001 KEY && chmod 0640 KEY (docs/deploy.md).
RUN groupadd --system --gid 10001 fedmllm \
    && useradd --system --uid 10001 --gid fedmllm --home-dir /var/lib/fedmllm --create-home fedmllm \
    && chmod 0700 /var/lib/fedmllm
COPY deploy/docker/healthcheck.py /usr/local/bin/fedmllm-healthcheck
ENV HF_HOME=/var/lib/fedmllm/.cache/huggingface HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
USER fedmllm
VOLUME /var/lib/fedmllm
EXPOSE 50051 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/fedmllm-healthcheck", "--tcp", "127.0.0.1:50051", "--metrics", "127.0.0.1:9464"]
ENTRYPOINT ["fedmllm-coordinator", "--checkpoint-dir", "/var/lib/fedmllm/checkpoints"]
