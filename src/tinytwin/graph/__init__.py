"""Graph workloads: traffic forecasting on a sensor graph (issue #13).

Sensors are nodes of a road graph and one sensor's readings are features of its neighbours'
models, so a cloudlet must fetch boundary-node features from the cloudlets that hold them.
``forecasting`` (METR-LA week windows, scaler, MAE / RMSE / WMAPE), ``stgcn`` (the ST-GCN model,
its parameter count and FLOPs), ``cloudlets`` (sensor-to-cloudlet assignment, k-hop halos,
node-feature bytes), ``setups`` (centralized, traditional FL, server-free FL, gossip).
"""
