"""XDS.b Document Repository actor (ITI TF-1 §10): ITI-41 Provide and Register, ITI-43 Retrieve."""
