# One image for web, worker and beat (docker-compose.yml picks the command).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
# torch from PyTorch's CPU index first: from PyPI, torch==2.13.0 is the CUDA build with gigabytes of
# nvidia-* packages; the CPU wheel (2.13.0+cpu) then satisfies the pin in requirements.txt.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --system --home /app recsys && chown -R recsys /app
USER recsys
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "-b", "0.0.0.0:8000", "recsys.wsgi:application"]
