"""Plan conversion: machine coincidence (how alike two machines are) and standard -> specific plans."""
