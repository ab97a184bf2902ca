# The one image of every spotex process (migrate, engine, api, worker); docker-compose.yaml picks
# the command. Python 3.11 as in CI; dependencies pinned by pyproject.toml. The engine, domain and
# audit modules are compiled with mypyc (SPOTEX_MYPYC=1, setup.py): the build CI tests after the
# pure suite (scripts/test.sh) and the audit figures of docs/performance.md are measured on.

# --- build: the compiled wheel (a C compiler is needed here only) ------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md MANIFEST.in ./
COPY _build ./_build
COPY domain ./domain
COPY engine ./engine
COPY projections ./projections
COPY api ./api
COPY spotex ./spotex
COPY migrations ./migrations
# The build requirements: setuptools from [build-system] in pyproject.toml, and mypy (for mypyc),
# which _build/backend.py adds because SPOTEX_MYPYC=1 is set.
RUN SPOTEX_MYPYC=1 pip wheel --no-deps -w /wheels .

# --- the image ---------------------------------------------------------------------------------
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

# The compiled package, installed as a wheel: projections/migrate.py finds the migrations under
# <prefix>/share/spotex/migrations. The check fails the build if the engine is not the compiled one.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/spotex-*.whl && rm -rf /tmp/wheels \
    && cd / && python -c "import domain, engine, projections, api, spotex, api.routers, engine.exchange as m; \
assert m.__file__.endswith('.so'), m.__file__"

USER spotex
EXPOSE 8000
CMD ["spotex", "api", "--host", "0.0.0.0", "--port", "8000"]
