"""From network outputs to measurements: detections, 3D positions, counts, labels, tracks; metrics;
the Cramer-Rao lower bound; classical baselines."""
