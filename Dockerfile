# The server as an image. The build stage compiles the Cython extension once into a
# virtual environment; the run stage copies that environment onto the same base, so
# the image holds the compiled server and no compiler.
#
# BASE must be a Debian-family image with python3 (3.11 or newer) and apt-get. The
# default is the official Python image; `make test-image` builds FROM a local Debian
# base because no registry can be reached there.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# gcc builds the extension; python3-dev only where the base lacks Python's headers
# (the official image ships them, Debian's python3 does not).
RUN set -eux; \
    packages="gcc libc6-dev"; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages="$packages python3-dev"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The whole context, which .dockerignore cuts down to what the package is built from.
COPY . .
# Not editable: the run stage gets the package and its compiled module, not this source tree.
RUN pip install --no-cache-dir .

FROM ${BASE}
# A fixed uid/gid so a volume's owner can be set from the host; /data exists and is
# the user's before VOLUME, as changes to a volume's directory after it are discarded.
RUN set -eux; \
    groupadd --gid 10001 iothub; \
    useradd --uid 10001 --gid iothub --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin iothub; \
    mkdir /data; \
    chown iothub:iothub /data
COPY --from=build /opt/venv /opt/venv
# HOST is explicit: in a container the server must listen on every interface, whatever
# the server's own default is.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=6162 \
    IOTHUB_DB_PATH=/data/iothub.db
VOLUME /data
WORKDIR /data
EXPOSE 6162
USER 10001:10001
# No curl in a slim image: Python asks /health; urlopen fails on anything but a 2xx. With
# IOTHUB_TLS_CERT it asks over HTTPS without checking the certificate, which names the public host.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('IOTHUB_TLS_CERT')); urllib.request.urlopen('%s://127.0.0.1:%s/health' % ('https' if tls else 'http', os.environ.get('PORT', '6162')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]
ENTRYPOINT ["iothub"]
CMD ["serve"]
