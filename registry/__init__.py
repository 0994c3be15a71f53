"""XDS.b Document Registry actor (ITI TF-1 §10): ITI-42 Register, ITI-18 Stored Query."""
