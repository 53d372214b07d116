"""The one send path: client (timeouts, retry, rate limit), auth, error wording, transport."""
