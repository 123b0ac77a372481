"""Drop-in replacements with the names and conventions of other libraries."""
