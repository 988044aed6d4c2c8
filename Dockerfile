# The Esper trainer. CPU by default; the CUDA variant is the same image built with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (PyTorch's CUDA wheels carry their CUDA libraries; the host needs the NVIDIA driver and the
# NVIDIA container toolkit). docker-compose.yml builds both (the GPU one in the "gpu" profile).
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 esper \
    && mkdir -p /runs /targets \
    && chown esper:esper /runs /targets

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

USER esper
EXPOSE 9100
VOLUME ["/runs"]
ENTRYPOINT ["esper"]
CMD ["train", "ppo", "--telemetry-dir", "/runs", "--metrics-addr", "0.0.0.0", "--metrics-port", "9100"]
