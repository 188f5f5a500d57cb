FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY ingest ./ingest
COPY processor ./processor
COPY report ./report
COPY sites ./sites
COPY sql ./sql
RUN pip install --no-cache-dir .
USER nobody
ENV PORT=3000
EXPOSE 3000
CMD ["python", "-m", "ingest"]
