# The FedMLLM silo agent: CPU torch and the `silo` extra, run as the unprivileged user fedmllm
# (uid and gid 10001). For a GPU silo, start FROM a CUDA base image and install the CUDA build of
# torch instead. Build from the repository root:
#   docker build -f deploy/docker/silo.Dockerfile -t fedmllm-silo .
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY coordinator coordinator
COPY silo_agent silo_agent
COPY bench bench
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(echo /wheels/fedmllm-*.whl)[silo]" && rm -rf /wheels
# Mounted keys must be readable by this group: chgrp 10001 KEY && chmod 0640 KEY (docs/deploy.md).
# The home holds the judge's verdict cache (~/.cache/fedmllm/judge.jsonl).
RUN groupadd --system --gid 10001 fedmllm \
    && useradd --system --uid 10001 --gid fedmllm --home-dir /var/lib/fedmllm --create-home fedmllm \
    && chmod 0700 /var/lib/fedmllm
COPY deploy/docker/healthcheck.py /usr/local/bin/fedmllm-healthcheck
ENV HF_HOME=/var/lib/fedmllm/.cache/huggingface HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
USER fedmllm
EXPOSE 9465
# Healthy while the agent serves its metrics: start it with --metrics-port 9465.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "/usr/local/bin/fedmllm-healthcheck", "--metrics", "127.0.0.1:9465"]
ENTRYPOINT ["silo-agent"]
