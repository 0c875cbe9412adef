# airlock's container image: one static binary, the CA bundle for HTTPS
# upstreams, and a writable data directory for the non-root user.
#
# The build context is prepared by scripts/image.sh (make image), which
# compiles the binary with CGO_ENABLED=0 and copies the CA bundle, so the
# image builds without network access and without a base image.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chown=65532:65532 data /var/lib/airlock
COPY airlock /airlock
USER 65532:65532
WORKDIR /var/lib/airlock
EXPOSE 5000 5001
ENTRYPOINT ["/airlock"]
CMD ["serve"]
