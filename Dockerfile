# The one image of every spotex process (migrate, engine, api, worker); docker-compose.yaml picks
# the command. Python 3.11 as in CI; dependencies pinned by pyproject.toml.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPOTEX_ENV=production

RUN useradd --system --create-home --uid 10001 spotex
WORKDIR /app

# Dependencies first, in a layer that changes only with pyproject.toml.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed in place: projections/migrate.py finds migrations/ beside the packages.
COPY domain ./domain
COPY engine ./engine
COPY projections ./projections
COPY api ./api
COPY spotex ./spotex
COPY migrations ./migrations
RUN pip install --no-deps -e . && python -c "import domain, engine, projections, api, spotex"

USER spotex
EXPOSE 8000
CMD ["spotex", "api", "--host", "0.0.0.0", "--port", "8000"]
