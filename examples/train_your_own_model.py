"""Train a model of your own on the store's features, save it bound to their schema, and serve it.

Run it after `make demo`, which builds the local store it reads: `.venv/bin/python examples/train_your_own_model.py`.
Each block below is one notebook cell. The demo's churn labels stand in for your own labels: any frame of entity
keys and times will do.
"""

# %% 1. The store the environment names (the demo's embedded DuckDB and SQLite locally; PostgreSQL and Redis in prod)
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from feature_assets import FeatureStore
from feature_assets.serving import Predictor

store = FeatureStore()

# %% 2. Entity rows: who, and as of when
labels = store.warehouse.query("select user_id, label_time, churned from churn_labels order by label_time, user_id")

# %% 3. Point-in-time features: each row sees each view's latest snapshot strictly before its own time (within the
# view's TTL), exactly as the training sets do. "churn_model" names the features that model declares; the user's
# country (the key of country_features) comes from the user's snapshot as of the same time.
frame = store.historical_features(labels, "churn_model")
frame = frame[frame["user_features__computed_at"].notna() & frame["country_features__computed_at"].notna()]
print(f"{len(frame)} rows with features, {frame['churned'].mean():.1%} churned")

# %% 4. Fit any estimator on the input serving will give it (model_input: numbers as floats, strings as objects)
features = store.model_input(frame, "churn_model")
numbers = [name for name in features.columns if features[name].dtype == float]
strings = [name for name in features.columns if name not in numbers]
pipeline = make_pipeline(
    ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median"), numbers),
            (
                "strings",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="none"), OneHotEncoder(handle_unknown="ignore")
                ),
                strings,
            ),
        ]
    ),
    RandomForestClassifier(n_estimators=100, min_samples_leaf=20, n_jobs=1, random_state=0),
)
split = int(len(frame) * 0.8)  # validate on the latest label times: a look into the future, as serving is
pipeline.fit(features.iloc[:split], frame["churned"].iloc[:split])
auc = roc_auc_score(frame["churned"].iloc[split:], pipeline.predict_proba(features.iloc[split:])[:, 1])
print(f"validation AUC {auc:.3f}")

# %% 5. Save it: a new version bound to the views, dtypes and definition checksums it read, with its training rows
version = store.save_model(
    "churn_forest", pipeline, "churn_model", task="classification", training=frame, metrics={"auc": auc}
)
print(f"saved churn_forest {version}")

# %% 6. Serve it (refused, naming the feature, while a view it reads has a drift error; force=True overrides)
store.promote("churn_forest", version)

# %% 7. A prediction in Python, from the online store
user = int(frame["user_id"].iloc[-1])
prediction = Predictor(store.online_store, store.model_store).predict_one("churn_forest", user)
print(f"in Python: user {user} churns with probability {prediction.score:.3f} (version {prediction.version})")

# %% 8. The same prediction over HTTP, from `featurestore serve`
featurestore = Path(sys.executable).with_name("featurestore")
server = subprocess.Popen([featurestore, "serve", "--port", "0", "--workers", "1"], stdout=subprocess.PIPE, text=True)
try:
    assert server.stdout is not None
    url = server.stdout.readline().split()[2]  # "featurestore serve: http://127.0.0.1:PORT with ..."
    for _ in range(100):  # the worker loads the models before it answers
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    request = urllib.request.Request(
        f"{url}/v1/predict/churn_forest",
        data=json.dumps({"entities": [{"user_id": user}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    answer = json.load(urllib.request.urlopen(request, timeout=10))
    print(f"over HTTP: {json.dumps(answer['predictions'][0])}")
finally:
    server.terminate()
    server.wait()
store.close()
