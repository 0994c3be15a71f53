"""PIX Manager keyed on the INS (IHE PIX: ITI-8 feed, ITI-9 query, ITI-10 notification).

Layers: :mod:`pix.ins` (matricule INS), :mod:`pix.model` (typed requests),
:mod:`pix.manager` (the transport-free core on a database connection),
:mod:`pix.hl7v2` (HL7 v2 messages), :mod:`pix.mllp` (the asyncio MLLP server),
:mod:`pix.outbox` (durable ITI-10 notifications), :mod:`pix.listener` (``opendmp serve``).
"""
