"""Who we may write to: contacts (signup, opt-in, unsubscribe, preferences), the
consent ledger, lists, imports, and the staff directory (search and export)."""
