"""IHE XUA / DMP VIHF: the identity context of a verified SAML assertion
(:mod:`xua.identity`), configuration and pipeline step (:mod:`xua.config`), and a
development identity provider (:mod:`xua.idp`, ``opendmp idp issue``). The WS-Security
verification itself is :mod:`soapstack.wssecurity`."""
