"""spotex domain package."""
