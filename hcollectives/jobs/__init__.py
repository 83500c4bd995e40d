"""What users import: `MRCollectiveJob`, `AllReduce`/`AllGather`, the map-task plumbing,
and the streaming front end (`hcollectives wrap` in tasks, `hcollectives run` in the driver)."""
