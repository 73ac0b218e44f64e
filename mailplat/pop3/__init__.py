"""POP3: the pop3 (STLS) and pop3s listeners."""
