"""HL7 v3 binding of the PIX Manager (ITI TF-2b §3.44 ITI-44, §3.45 ITI-45, §3.46 ITI-46).

Messages are parsed with lxml (through :func:`soapstack.xml.parse_xml` at the SOAP
layer) into :mod:`pix.model` requests; :mod:`pix.manager` does the work; the answers
(MCCI_IN000002UV01, PRPA_IN201310UV02) and ITI-46 notifications (PRPA_IN201302UV02)
are built here as lxml trees serialized to bytes.
"""
