"""The one exception type that means "the user asked for something impossible".

The CLI turns it into a single line on stderr and exit code 2; nothing is written before
it is raised (configs are validated before any output folder is created). It is a
`ValueError`, so notebook code that already catches bad values catches it too.
"""


class UserError(ValueError):
    """Bad input: an unknown key, a wrong type, an impossible value, a corrupt data file."""
