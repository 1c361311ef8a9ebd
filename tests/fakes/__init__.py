"""Local fakes of outside services, built from their published API descriptions.

Each fake is a small HTTP server on 127.0.0.1 (a thread, a free port) that the real SDK is
pointed at, so adapters are tested through the SDK exactly as in production, and the fake keeps
the record a real gateway keeps (so a test can count charges).
"""
