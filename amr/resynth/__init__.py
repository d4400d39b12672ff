"""Re-synthesis of Clotho-Moment from raw audio (Clotho v2.1 clips over Walking Tours recordings),
streamed: backgrounds are read as slices of the long recordings, never written as clips."""
