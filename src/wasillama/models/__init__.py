"""Model files shipped inside the package (see NOTICE.md here for their provenance and licences)."""
