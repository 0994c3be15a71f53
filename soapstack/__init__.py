"""Shared SOAP 1.2 plumbing for every OpenDMP actor.

One place for the envelope (SOAP 1.2, W3C Recommendation 2007), WS-Addressing 1.0
(W3C 2006), MTOM/XOP and WS-Security, so that actors (registry, repository, PIX)
receive a parsed :class:`~soapstack.envelope.SoapRequest` and return a
:class:`~soapstack.envelope.SoapResponse`, free of transport details.
Why this is written here instead of taken from spyne: ../shared/research/deps.md §1.
"""
