"""hcollectives: MPI-style collectives (Map-AllReduce, Map-AllGather) for Hadoop
streaming and mrjob jobs."""
