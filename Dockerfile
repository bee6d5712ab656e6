# The aioflow image of compose.yaml: `aioflow serve|worker examples/hello.py:app`.
# For your own flows, copy your module in place of examples/ and name it in the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[otlp]"
COPY examples ./examples

RUN useradd --system --uid 10001 aioflow
USER aioflow
EXPOSE 8080 9100
CMD ["aioflow", "--help"]
