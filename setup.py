from setuptools import find_packages, setup

# Pinned as one set: the dagster family must move together (dagster 1.13.N with libraries 0.29.N),
# and dbt-core 1.12 cannot install without network access beyond the package index.
setup(
    name="featurestore",
    version="0.1.0",
    description="A lightweight ML feature store: dbt feature definitions, offline history, online snapshot.",
    packages=find_packages(exclude=["feature_assets_tests"]),
    python_requires=">=3.11",
    install_requires=[
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-dbt==0.29.27",
        "dagster-postgres==0.29.27",
        "dagster-slack==0.29.27",
        "slack-sdk==3.48.0",
        "dbt-core==1.11.16",
        "dbt-duckdb==1.11.1",
        "dbt-postgres==1.11.0",
        "duckdb==2.0.1",
        "pandas==3.1.1",
        "numpy==2.4.6",
        "scikit-learn==1.9.1",
        "scipy==1.17.1",
        "matplotlib==3.11.2",
        "redis==8.1.0",
        "hiredis==3.5.0",
        "psycopg[binary]==3.3.9",
        # featurestore serve: Starlette on uvicorn with uvloop and httptools, metrics summed over worker processes.
        "starlette==1.10.0",
        "uvicorn==0.54.0",
        "uvloop==0.23.0",
        "httptools==0.9.0",
        "prometheus-client==0.26.0",
    ],
    extras_require={
        # FEATURE_STORE_WAREHOUSE=spark: dbt-spark's session method and the warehouse reads go through Spark Connect
        # (grpcio-status, googleapis-common-protos, zstandard), Arrow (pyarrow) carries the rows; Spark 4.3 runs on
        # Java 17, a system package.
        "spark": [
            "dbt-spark[session]==1.11.0",
            "pyspark==4.3.0",
            "pyarrow==26.0.1",
            "grpcio-status==1.85.3",
            "googleapis-common-protos==1.76.0",
            "zstandard==0.25.0",
        ],
        "test": ["pytest==9.2.0", "hypothesis==6.170.17", "playwright==1.65.2", "httpx==0.28.1"],
    },
    entry_points={"console_scripts": ["featurestore=feature_assets.cli:main"]},
)
