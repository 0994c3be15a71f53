# OpenDMP: XDS.b registry/repository, PIX and ATNA in one image.
#   docker build -t opendmp .
#   docker run -p 8080:8080 -v opendmp-data:/var/lib/opendmp opendmp
#   docker run --rm -v opendmp-data:/var/lib/opendmp opendmp patient add '123^^^&1.2.250.1.213.1.4.8&ISO'
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENDMP_HOME=/var/lib/opendmp

WORKDIR /app

# Dependencies first (pinned in setup.cfg), so code changes reuse this layer.
COPY setup.cfg pyproject.toml ./
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print('\n'.join(l.strip() for l in c['options']['install_requires'].splitlines() if l.strip()))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, with the vendored schemas/, wsdl/ and valuesets/ beside it; an
# editable install keeps them where the code looks for them.
COPY . .
RUN pip install --no-cache-dir -e . \
    && python -c "import lxml.etree, xmlsec, opendmp" \
    && groupadd --system --gid 10001 opendmp \
    && useradd --system --uid 10001 --gid opendmp --home-dir /var/lib/opendmp --shell /usr/sbin/nologin opendmp \
    && install -d -o opendmp -g opendmp -m 750 /var/lib/opendmp

USER opendmp
VOLUME ["/var/lib/opendmp"]
# 8080 HTTP (SOAP), 2575 HL7v2/MLLP (PIX), 6514 syslog over TLS and 5514/udp syslog (ATNA)
EXPOSE 8080 2575 6514 5514/udp

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"

ENTRYPOINT ["opendmp"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
