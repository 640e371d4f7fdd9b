# The FedMLLM coordinator. Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedmllm-coordinator .
FROM python:3.11-slim
WORKDIR /opt/fedmllm
COPY pyproject.toml README.md ./
COPY shared shared
COPY coordinator coordinator
COPY silo_agent silo_agent
COPY bench bench
# torch first, as a CPU build: the coordinator never runs a model
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .
RUN useradd --system --home /var/lib/fedmllm fedmllm && mkdir -p /var/lib/fedmllm \
    && chown fedmllm /var/lib/fedmllm
USER fedmllm
EXPOSE 50051 9464
ENTRYPOINT ["fedmllm-coordinator", "--checkpoint-dir", "/var/lib/fedmllm/checkpoints"]
