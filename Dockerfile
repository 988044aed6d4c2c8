# The Esper trainer. CPU by default; the CUDA variant is the same image built with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# PyTorch publishes torch==2.13.0 for cpu, cu126 and cu130, and not for cu128 (deprecated with
# 2.12); deploy/trainer/torch-wheels.toml records this, and a test checks every pin against it.
# cu126 is chosen for the GPU image because it runs on the widest range of drivers (CUDA 12.x
# minor-version compatibility, driver >= 525); cu130 needs driver >= 580. PyTorch's CUDA wheels
# carry their CUDA libraries: the host needs only the NVIDIA driver and the NVIDIA container
# toolkit. docker-compose.yml builds both (the GPU one in the "demo-gpu" profile).
# The report's charting library (uPlot) from npm, at the version js/package-lock.json pins.
FROM node:20.19.5-slim AS report-assets
WORKDIR /js
COPY js/package.json js/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11.14-slim-trixie

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
COPY --from=report-assets /js/node_modules/uplot/package.json /opt/esper/uplot/package.json
COPY --from=report-assets /js/node_modules/uplot/dist /opt/esper/uplot/dist
ENV ESPER_UPLOT_DIR=/opt/esper/uplot/dist

USER esper
EXPOSE 9100
VOLUME ["/runs"]
ENTRYPOINT ["esper"]
CMD ["train", "ppo", "--telemetry-dir", "/runs", "--metrics-addr", "0.0.0.0", "--metrics-port", "9100"]
