"""Clinical interchange: DICOM Structured Reports, FHIR DiagnosticReports, and the DICOMweb PACS loop.

These sit next to the protocol adapters (the HTTP service, the CLI), not in the engine: they turn a
finished report plus its source images into a clinical document, and move studies to and from a PACS.
"""
