# The FedMLLM silo agent. Build from the repository root:
#   docker build -f deploy/docker/silo.Dockerfile -t fedmllm-silo .
# For a GPU silo, start FROM a CUDA base image and install the CUDA build of torch instead.
FROM python:3.11-slim
WORKDIR /opt/fedmllm
COPY pyproject.toml README.md ./
COPY shared shared
COPY coordinator coordinator
COPY silo_agent silo_agent
COPY bench bench
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .
RUN useradd --system fedmllm
USER fedmllm
EXPOSE 9465
ENTRYPOINT ["silo-agent"]
