"""HL7 v2 binding of the PIX Manager: messages in (python-hl7), acknowledgements out.

:func:`pix.hl7v2.handler.handle` turns one received message (bytes) into one answer
(bytes); it never raises and never answers nothing.
"""
