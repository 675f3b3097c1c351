# Caudal broker image, built without a registry: build it with scripts/docker-image, which
# stages target/docker/rootfs (the release binary, the shared libraries `ldd` lists for it,
# the dynamic loader, /etc/passwd, /etc/group, /etc/nsswitch.conf and /tmp) and an empty
# target/docker/data, then runs `docker build` here. `FROM scratch` is built into Docker and
# pulls nothing. There is no shell in the image: the healthcheck is `caudal group list`.
FROM scratch

ARG CAUDAL_UID=65532

COPY target/docker/rootfs/ /
# Owned by the broker's user, so that a new named volume mounted here is writable by it.
COPY --chown=${CAUDAL_UID}:${CAUDAL_UID} target/docker/data/ /var/lib/caudal/

USER ${CAUDAL_UID}:${CAUDAL_UID}

# The same settings as `--listen 0.0.0.0:9092 --data-dir /var/lib/caudal`; any other
# setting can be given as CAUDAL_<NAME> (CAUDAL_ADVERTISE, CAUDAL_NUM_PARTITIONS, ...) or as
# flags after `serve`.
ENV CAUDAL_LISTEN=0.0.0.0:9092 \
    CAUDAL_DATA_DIR=/var/lib/caudal

VOLUME ["/var/lib/caudal"]
EXPOSE 9092

# The broker is PID 1 and handles SIGTERM (Docker's stop signal) itself: it shuts down cleanly.
ENTRYPOINT ["/usr/bin/caudal"]
CMD ["serve"]

# Last, so that a new revision alone does not invalidate the layers above.
ARG CAUDAL_VERSION=unknown
ARG CAUDAL_REVISION=unknown
LABEL org.opencontainers.image.title="Caudal" \
      org.opencontainers.image.description="Caudal: a Kafka-compatible event streaming platform" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CAUDAL_VERSION}" \
      org.opencontainers.image.revision="${CAUDAL_REVISION}"
