"""`navig eval`: geo-accuracy of a running Geolocator on a CSV dataset, resumable and offline."""
