"""OpenDMP platform: configuration, database, WSGI assembly and the ``opendmp`` command."""
