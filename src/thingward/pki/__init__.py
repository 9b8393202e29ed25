"""Public key infrastructure: the platform CA, certificates issued from CSRs, the CRL, and key stores."""
