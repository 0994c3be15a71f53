"""CDA R2 documents: validation, XDS metadata from the header, ITI-41 cross-check, push,
patient summary, HTML rendering (issue 6)."""
