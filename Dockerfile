FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY store store
COPY workers workers
COPY service service
RUN pip install --no-cache-dir .
CMD ["skillmix", "serve", "--host", "0.0.0.0"]
