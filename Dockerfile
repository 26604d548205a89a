FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gridhub gridhub
COPY ingest ingest
COPY detectors detectors
COPY alerts alerts
COPY api api
COPY simulators simulators
RUN pip install --no-cache-dir .
RUN useradd --system --home /var/lib/gridhub gridhub && mkdir -p /var/lib/gridhub && chown gridhub /var/lib/gridhub
USER gridhub
EXPOSE 8000
CMD ["gridhub", "up"]
