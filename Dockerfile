# The one flowrig image: flow runner, Dask scheduler and Dask worker for one flow project.
#
#   docker build --build-arg PROJECT=flows/etl --build-arg TLS_MODE=per-run -t etl .
#   docker build --build-arg TLS_NONCE="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" -t my-flow .
#   docker build --build-arg PROJECT=flows/etl --build-arg BASE_IMAGE=debian-with-python:12 ...
#
# Any builder builds it: BuildKit (docker buildx, DOCKER_BUILDKIT=1) and the legacy builder
# (DOCKER_BUILDKIT=0, a client without buildx) alike, so no RUN --mount and no # syntax=
# line (the frontend it names would have to be pulled). `flowrig build PROJECT --tag TAG`
# renders a minimal context for this same file and runs it.
#
# BASE_IMAGE: any Debian-based image whose `python3` (>= 3.11) can make a venv. Nothing else
# is assumed: no apt-get, no compiler, no binutils (stripping happens only if `strip` exists).
# PROJECT: the flow project directory inside the context (holds flowrig.toml); any folder of
# the repository (.dockerignore keeps out what must never be sent).
# TLS_MODE: `baked` (the default) puts a CA certificate, a leaf and its key into the image:
# the context's tls/ when it has one, else a CA made for this build alone, which needs
# TLS_NONCE, a value never used before (the step that makes the CA is cached by it, so
# a repeated value would hand an earlier build's CA and key to this image; `flowrig build`
# passes a random one). `per-run` bakes no certificate and no key: each run's roles get
# their own at start (flowrig.certs.delivery).
# pip-ca.crt: a CA bundle pip should trust (a TLS-intercepting proxy, a private index),
# read from the context's root when it is there. Only the `build` stage copies it, and the
# image copies nothing from that stage but the venv: it stays in the local build cache and
# reaches no layer of the image. A bundle holds certificates only, nothing secret.
# A private index's .netrc is a secret, so it is never in the context: only a BuildKit
# build secret carries it (see layer 2), and a legacy builder is refused it.
#
# Cache layout: every dependency is installed before any flow code is copied, and the flow
# project is the last thing copied, so editing a flow rebuilds only the last layer and the
# import check after it.

ARG BASE_IMAGE=python:3.12-slim
ARG PROJECT=examples/seed
ARG TLS_MODE=baked

# --- requirements: flowrig's and the project's requirements as fixed files -------------------
# The whole project is copied here, but only the files this stage writes go on, and COPY
# --from caches on content: editing a flow re-runs this stage and nothing after it.
FROM ${BASE_IMAGE} AS requirements
ARG PROJECT
# The build's steps and the project rules they share with the host: stdlib-only modules that
# buildsteps.py loads by path, since flowrig is not installed yet.
COPY flowrig/builder/buildsteps.py flowrig/builder/buildsteps_install.py flowrig/builder/buildsteps_prune.py \
     flowrig/builder/buildsteps_layers.py flowrig/project/build_rules.py flowrig/project/secret_rules.py flowrig/project/secret_scan.py \
     /opt/flowrig/build/
COPY pyproject.toml constraints.txt /opt/flowrig/build/
COPY ${PROJECT}/ /opt/flowrig/build/project/
# GPU (`flowrig build --gpu cuda12`): the CUDA runtime's wheels, installed with the project's.
ARG GPU=""
RUN python3 /opt/flowrig/build/buildsteps.py requirements \
        --pyproject /opt/flowrig/build/pyproject.toml \
        --constraints /opt/flowrig/build/constraints.txt \
        --project /opt/flowrig/build/project \
        --gpu "$GPU" \
        --out /opt/flowrig/requirements \
 && python3 /opt/flowrig/build/buildsteps.py imports --project /opt/flowrig/build/project \
        --out /opt/flowrig/imports/modules.txt

# --- deps: the runtime venv with flowrig's own dependencies, made by the target interpreter ---
# No project file reaches this stage (only flowrig's requirements, which depend on the
# project's backend alone), so every project on the same flowrig, base and backend gets
# the very same venv layer: registries, hosts and the build cache keep it once.
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# STRIP=auto: strip the venv's shared objects where that provably changes nothing the
# loader maps (about 40 MB less with the scientific stack; libraries auditwheel vendored
# under *.libs/ are never touched: strip breaks numpy's OpenBLAS), installing binutils in
# this stage only when the base lacks them and has apt-get and a reachable mirror; any
# failure just means no stripping. STRIP=off strips nothing and installs nothing.
ARG STRIP=auto
# pip lives in its own venv and installs into the runtime venv with `pip --python`, so the
# runtime venv never contains pip, setuptools or wheel.
RUN if [ "$STRIP" = auto ] && ! command -v strip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
        { apt-get update -qq -o Acquire::Retries=0 -o Acquire::http::Timeout=10 \
          && apt-get install -y -qq --no-install-recommends binutils; } >/dev/null 2>&1 \
        || echo "binutils not available: shared objects will not be stripped"; \
    fi \
 && python3 -m venv /opt/flowrig/tools \
 && python3 -m venv --without-pip /opt/flowrig/venv
COPY flowrig/builder/buildsteps.py flowrig/builder/buildsteps_install.py flowrig/builder/buildsteps_prune.py \
     flowrig/builder/buildsteps_layers.py flowrig/project/build_rules.py /opt/flowrig/build/
# constraints.txt keeps the COPY valid when the context has no pip-ca.crt (and changes only
# when layer 1 must be built again anyway).
COPY constraints.txt pip-ca.cr[t] /opt/flowrig/build/pip-ca/
# Layer 1: flowrig's own dependencies (and the build backend, for the offline install of
# flowrig below). A wheelhouse built here, then an offline install from it. Every install
# is pinned by constraints.txt, flowrig's lock (uv.lock) exported for pip: the image gets
# the versions CI tested.
COPY --from=requirements /opt/flowrig/requirements/flowrig.txt /opt/flowrig/requirements/build.txt /opt/flowrig/requirements/constraints.txt /opt/flowrig/requirements/
RUN python3 /opt/flowrig/build/buildsteps.py install \
        --pip /opt/flowrig/tools/bin/pip --python /opt/flowrig/venv/bin/python \
        --wheels /opt/flowrig/wheels --pip-ca /opt/flowrig/build/pip-ca/pip-ca.crt \
        --constraints /opt/flowrig/requirements/constraints.txt \
        --build-requirements /opt/flowrig/requirements/build.txt \
        /opt/flowrig/requirements/flowrig.txt
# Prune (tests, caches, pip & co., data no role reads; strip as STRIP says), put flowrig's
# own directory on the venv's path, add the dask-scheduler/dask-worker commands that
# dask-cloudprovider runs (distributed no longer ships them), then compile bytecode only
# for the modules the image's commands import: it halves their start-up time, while
# compiling every module would add about 90 MB. Those of a package the image does not
# install are skipped; one that is installed and does not import fails the build. Last,
# the snapshot that tells the project's layer from this one.
ARG COMPILE_MODULES="prefect prefect.flows prefect.tasks prefect.flow_engine prefect.task_engine prefect.server.api.server prefect_dask distributed distributed.cli.dask_scheduler distributed.cli.dask_worker distributed.dashboard.scheduler dask_cloudprovider.aws typer"
RUN python3 /opt/flowrig/build/buildsteps.py prune /opt/flowrig/venv --strip "$STRIP" \
 && python3 /opt/flowrig/build/buildsteps.py add-path /opt/flowrig/venv /opt/flowrig/app \
 && for role in scheduler worker; do \
        printf '#!/bin/sh\nexec flowrig-entrypoint dask-%s "$@"\n' "$role" > "/opt/flowrig/venv/bin/dask-$role" \
     && chmod 0755 "/opt/flowrig/venv/bin/dask-$role"; \
    done \
 && python3 /opt/flowrig/build/buildsteps.py compile --python /opt/flowrig/venv/bin/python \
        --root /opt/flowrig/venv ${COMPILE_MODULES} \
 && python3 /opt/flowrig/build/buildsteps.py snapshot /opt/flowrig/venv --out /opt/flowrig/build/deps.json

# --- build: the project's requirements on top of flowrig's ---------------------------------
FROM deps AS build
ARG STRIP=auto
# Layer 2: the project's requirements (changing them leaves layer 1 cached). A requirement
# pip cannot satisfy (a misspelt name, a version that does not exist or that conflicts
# with the lock) fails here with one line naming it. A private index's credentials come
# as a .netrc build secret, never in a file of the project: `flowrig build --pip-netrc
# FILE` builds this file with `--mount=type=secret,id=pip-netrc` added to this RUN (and
# to no other), which only BuildKit can do; without the mount the path does not exist
# and pip gets no credentials.
COPY --from=requirements /opt/flowrig/requirements/ /opt/flowrig/requirements/
RUN python3 /opt/flowrig/build/buildsteps.py install \
        --pip /opt/flowrig/tools/bin/pip --python /opt/flowrig/venv/bin/python \
        --wheels /opt/flowrig/wheels --pip-ca /opt/flowrig/build/pip-ca/pip-ca.crt \
        --pip-netrc /run/secrets/pip-netrc \
        --constraints /opt/flowrig/requirements/constraints.txt \
        /opt/flowrig/requirements/project.txt /opt/flowrig/requirements/gpu.txt
# The same prune and strip for what layer 2 added (layer 1's files stay as they are, their
# bytecode with them).
RUN python3 /opt/flowrig/build/buildsteps.py prune /opt/flowrig/venv --strip "$STRIP" \
        --keep /opt/flowrig/build/deps.json

# --- app: flowrig itself, in its own directory so that changing it re-copies ~4 MB and the
# project's own dependencies, not flowrig's
FROM build AS app
COPY pyproject.toml README.m[d] Dockerfil[e] constraints.tx[t] /opt/flowrig/src/
COPY flowrig/ /opt/flowrig/src/flowrig/
RUN python3 /opt/flowrig/build/buildsteps.py install-self \
        --pip /opt/flowrig/tools/bin/pip --python /opt/flowrig/venv/bin/python \
        --target /opt/flowrig/app /opt/flowrig/src \
 && python3 /opt/flowrig/build/buildsteps.py compile --python /opt/flowrig/venv/bin/python \
        --root /opt/flowrig/app --all /opt/flowrig/app/flowrig

# --- project-layer: the image's second layer ------------------------------------------------
# Bytecode for the venv's modules that the project's code imports (a worker imports them
# when its first task arrives: numpy, pandas and scipy import in less than half the time),
# then a copy of every file the project's requirements and that bytecode added, and of
# flowrig itself: one layer, never an empty one. Editing a flow re-runs this only when
# the set of modules it imports changes.
FROM app AS project-layer
COPY --from=requirements /opt/flowrig/imports/modules.txt /opt/flowrig/build/imports.txt
RUN python3 /opt/flowrig/build/buildsteps.py compile --python /opt/flowrig/venv/bin/python \
        --root /opt/flowrig/venv --soft --modules-from /opt/flowrig/build/imports.txt \
 && python3 /opt/flowrig/build/buildsteps.py split /opt/flowrig/venv --since /opt/flowrig/build/deps.json \
        --out /opt/flowrig/layers/project \
 && cp -a /opt/flowrig/app /opt/flowrig/layers/project/opt/flowrig/app

# --- manifest: project config and the versions actually installed ----------------------------
FROM app AS manifest
ARG PROJECT
ARG BASE_IMAGE
ARG TLS_MODE
ARG GPU=""
COPY ${PROJECT}/flowrig.toml /opt/flowrig/build/project/flowrig.toml
# manifest.json exists in contexts rendered by `flowrig build`; pyproject.toml keeps the
# COPY valid when it does not.
COPY pyproject.toml manifest.jso[n] /opt/flowrig/build/context/
RUN python3 /opt/flowrig/build/buildsteps.py manifest --python /opt/flowrig/venv/bin/python \
        --project /opt/flowrig/build/project --project-name "$(basename "$PROJECT")" \
        --context-manifest /opt/flowrig/build/context/manifest.json \
        --base-image "$BASE_IMAGE" --tls-mode "$TLS_MODE" --gpu "$GPU" --out /opt/flowrig/out/manifest.json

# --- runtime-deps: the final image up to the flow project ------------------------------------
FROM ${BASE_IMAGE} AS runtime-deps
ENV PATH=/opt/flowrig/app/bin:/opt/flowrig/venv/bin:$PATH \
    FLOWRIG_IN_IMAGE=1 \
    PREFECT_HOME=/home/flowrig/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_UI_ENABLED=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# The runtime user, written directly when the base has no useradd.
RUN if command -v useradd >/dev/null 2>&1; then \
        groupadd --gid 10001 flowrig \
     && useradd --uid 10001 --gid 10001 --home-dir /home/flowrig --create-home \
            --shell /usr/sbin/nologin --no-log-init flowrig; \
    else \
        echo 'flowrig:x:10001:10001:flowrig:/home/flowrig:/usr/sbin/nologin' >> /etc/passwd \
     && echo 'flowrig:x:10001:' >> /etc/group \
     && mkdir -p /home/flowrig && chown 10001:10001 /home/flowrig; \
    fi \
 && mkdir -p /etc/flowrig/tls /opt/flowrig/project /home/flowrig/.prefect \
 && chown 10001:10001 /home/flowrig/.prefect
# Two layers: flowrig's dependencies (shared by every project on the same flowrig, base
# and backend), then what the project adds to the venv (its requirements, the bytecode
# its code needs), with flowrig itself.
COPY --from=deps /opt/flowrig/venv /opt/flowrig/venv
COPY --from=project-layer /opt/flowrig/layers/project/ /
# The migrated Prefect database template, made once here so that no run pays for migrations.
USER flowrig
RUN flowrig-entrypoint prepare
USER root

# --- tls: the certificates, baked in a stage of their own -----------------------------------
# The context's tls/ (ca.crt, tls.crt, tls.key; never ca.key) is copied here only, so the
# source files reach no layer of the image. With no tls/ in the context, bake-tls makes a
# CA and leaf in memory and writes only the CA certificate and the leaf; TLS_NONCE is on
# its command line so that the cache never hands one build's CA to another. With
# TLS_MODE=per-run it writes nothing. pyproject.toml keeps the COPY valid when tls/ does
# not exist.
FROM runtime-deps AS tls
ARG TLS_MODE
ARG TLS_NONCE=""
COPY pyproject.toml tl[s] /opt/flowrig/build/tls-source/
RUN flowrig-entrypoint bake-tls /opt/flowrig/build/tls-source --mode "$TLS_MODE" \
        --nonce "$TLS_NONCE" --out /opt/flowrig/build/tls-out

# --- the image --------------------------------------------------------------------------------
FROM runtime-deps AS runtime
# Certificates root-owned; the leaf key readable by the runtime user only (0600). Both
# directories are empty in a per-run image.
COPY --from=tls /opt/flowrig/build/tls-out/certs/ /etc/flowrig/tls/
COPY --from=tls --chown=10001:10001 /opt/flowrig/build/tls-out/key/ /etc/flowrig/tls/
COPY --from=manifest /opt/flowrig/out/manifest.json /opt/flowrig/manifest.json
# The flow project last: editing it rebuilds only this layer and the check below.
ARG PROJECT
COPY ${PROJECT}/ /opt/flowrig/project/
USER flowrig
WORKDIR /home/flowrig
# The image must be able to run its flow: as the runtime user, import the flow module and
# every module it and the project's own modules import (task bodies included). One that
# does not import (not in requirements.txt, a shared library that does not load) fails
# the build with one line naming it, so no such image is ever tagged. It keeps nothing.
RUN flowrig-entrypoint check-imports
# dumb-init as PID 1 forwards SIGTERM to the role, which execs Dask or the flow runner:
# `docker stop` ends a container in well under a second.
ENTRYPOINT ["dumb-init", "--", "flowrig-entrypoint"]
CMD ["run"]
# Labels go last, so changing them does not invalidate any cached layer. No secrets in
# ARG, ENV or LABEL: all three are readable by anyone who has the image.
ARG BASE_IMAGE
ARG TLS_MODE
ARG IMAGE_VERSION=""
ARG IMAGE_REVISION=""
# BuildKit sets TARGETARCH (the --platform's, else the engine's); a legacy build gets it from
# flowrig build. PLATFORM is what --platform asked for, GPU the runtime installed.
ARG TARGETARCH
ARG PLATFORM=""
ARG GPU=""
LABEL flowrig.tls-mode="${TLS_MODE}" \
      org.flowrig.architecture="${TARGETARCH}" \
      org.flowrig.gpu="${GPU}" \
      org.opencontainers.image.title="flowrig" \
      org.opencontainers.image.description="Prefect flow runner, Dask scheduler and Dask worker with mutual TLS, for one flow project" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.version="${IMAGE_VERSION}" \
      org.opencontainers.image.revision="${IMAGE_REVISION}"
