# The factory's own image: web, worker, beat and flower all run from it (see compose.yaml).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV FACTORY_HOME=/srv/factory PYTHONUNBUFFERED=1
RUN mkdir -p /srv/factory
CMD ["gunicorn", "-c", "config/gunicorn.py", "config.wsgi"]
